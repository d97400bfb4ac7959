//! The PostgreSQL wire protocol (v3, through `pgwire`): password login, the simple and the
//! extended query protocol, each connection with its own [`Session`].
//!
//! pgwire handles one connection's messages one after another, so a session is never used by
//! two requests at once; its mutex exists only to move it onto a blocking thread for each
//! request and back.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{stream, Sink, SinkExt};
use gluesql_core::ast::DataType;
use gluesql_core::chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use gluesql_core::data::Value;
use gluesql_core::translate::ParamLiteral;
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuthStartupHandler};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::extendedquery::Sync as PgSync;
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use rust_decimal::Decimal;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use triad_shim::Client;

use crate::error::SqlError;
use crate::session::{literal, Block, Outcome, Prepared, Session};
use crate::types::{encode_value, fields_from_rows, pg_type};

/// The one user the front end accepts, and its password (MD5 challenge on the wire).
#[derive(Clone)]
pub struct Auth {
    pub user: String,
    pub password: String,
}

impl Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("user", &self.user).finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for Auth {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        if user != self.user {
            // Same answer as a wrong password: don't tell strangers which users exist.
            return Err(PgWireError::InvalidPassword(user.to_owned()));
        }
        let salt: [u8; 4] = rand::random();
        Ok(Password::new(Some(salt.to_vec()), hash_md5_password(user, &self.password, &salt).into_bytes()))
    }
}

/// A listening SQL front end.
pub struct SqlServer {
    listener: TcpListener,
    client: Client,
    auth: Arc<Auth>,
    params: Arc<DefaultServerParameterProvider>,
}

impl SqlServer {
    pub async fn bind(addr: SocketAddr, client: Client, auth: Auth) -> std::io::Result<SqlServer> {
        let listener = TcpListener::bind(addr).await?;
        let mut params = DefaultServerParameterProvider::default();
        // Clients gate features on the major version; we speak 15's protocol and SQL subset.
        params.server_version = "15.0 (Triad)".to_owned();
        Ok(SqlServer { listener, client, auth: Arc::new(auth), params: Arc::new(params) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Accepts connections until the listener fails.
    pub async fn run(self) -> std::io::Result<()> {
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    warn!(error = %e, "accepting a SQL connection failed; continuing");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let _ = socket.set_nodelay(true);
            let handlers =
                Arc::new(Connection::new(self.client.clone(), self.auth.clone(), self.params.clone()));
            tokio::spawn(async move {
                debug!(%peer, "SQL connection");
                if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                    debug!(%peer, error = %e, "SQL connection ended with an error");
                }
            });
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || e.raw_os_error() == Some(24) // EMFILE: out of descriptors for now, not forever
}

/// Everything one connection needs; pgwire asks it for each kind of handler.
struct Connection {
    session: Arc<Mutex<Session>>,
    startup: Arc<Md5PasswordAuthStartupHandler<Auth, DefaultServerParameterProvider>>,
    parser: Arc<Parser>,
}

impl Connection {
    fn new(client: Client, auth: Arc<Auth>, params: Arc<DefaultServerParameterProvider>) -> Connection {
        let session = Arc::new(Mutex::new(Session::new(client, tokio::runtime::Handle::current())));
        Connection {
            parser: Arc::new(Parser { session: session.clone() }),
            session,
            startup: Arc::new(Md5PasswordAuthStartupHandler::new(auth, params)),
        }
    }
}

/// Runs `f` on the session on a blocking thread, so GlueSQL's synchronous storage calls (which
/// wait on the shim) never hold a runtime worker.
async fn on_session<T: Send + 'static>(
    session: &Arc<Mutex<Session>>,
    f: impl FnOnce(&mut Session) -> T + Send + 'static,
) -> Result<T, SqlError> {
    let session = session.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    })
    .await
    .map_err(|e| SqlError::Internal(format!("statement task failed: {e}")))
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Simple { session: self.session.clone() })
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Extended { session: self.session.clone(), parser: self.parser.clone() })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

struct Simple {
    session: Arc<Mutex<Session>>,
}

fn response(o: Outcome, formats: Option<(&[(String, Type)], &Format)>) -> Result<Response, SqlError> {
    Ok(match o {
        Outcome::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Outcome::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
        Outcome::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
        // Still inside a block: the status stays (or, after a failed block, becomes) "in a
        // transaction", which is what TransactionStart reports.
        Outcome::Chained(tag) => Response::TransactionStart(Tag::new(tag)),
        Outcome::Command { tag: "INSERT", rows } => {
            Response::Execution(Tag::new("INSERT").with_oid(0).with_rows(rows.unwrap_or(0)))
        }
        Outcome::Command { tag, rows: Some(n) } => Response::Execution(Tag::new(tag).with_rows(n)),
        Outcome::Command { tag, rows: None } => Response::Execution(Tag::new(tag)),
        Outcome::Rows { labels, rows } => {
            let fields: Vec<FieldInfo> = match formats {
                Some((described, format)) => {
                    if described.len() != labels.len() {
                        return Err(SqlError::Encode(format!(
                            "the statement returned {} columns but {} were described; run it with the simple query protocol",
                            labels.len(),
                            described.len()
                        )));
                    }
                    described
                        .iter()
                        .enumerate()
                        .map(|(i, (name, ty))| {
                            FieldInfo::new(name.clone(), None, None, ty.clone(), format.format_for(i))
                        })
                        .collect()
                }
                None => fields_from_rows(&labels, &rows),
            };
            let fields = Arc::new(fields);
            let opts = FormatOptions::default();
            let mut enc = DataRowEncoder::new(fields.clone());
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                for (v, f) in row.iter().zip(fields.iter()) {
                    encode_value(&mut enc, v, f.datatype(), f.format(), &opts)?;
                }
                out.push(Ok(enc.take_row()));
            }
            Response::Query(QueryResponse::new(fields, stream::iter(out)))
        }
    })
}

#[async_trait]
impl SimpleQueryHandler for Simple {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = query.to_owned();
        let ((outcomes, error), block) =
            match on_session(&self.session, move |s| (s.simple(&sql), s.block())).await {
                Ok(r) => r,
                Err(e) => ((vec![], Some(e)), Block::Failed),
            };
        // pgwire derives ReadyForQuery's status from the responses: an error inside a block
        // marks it failed. But a COMMIT that fails (a conflict) ends the block, as in
        // PostgreSQL, and drivers that track the status (psycopg) must see it idle, or they
        // take their next BEGIN for a nested one. Returned as a query-level error instead,
        // pgwire reports the status the session set; any earlier results of the same query
        // string are then not sent — libpq would only have kept the error anyway.
        if let Some(e) = &error {
            let block_began = outcomes.iter().any(|o| matches!(o, Outcome::Begin));
            let was_in_block = client.transaction_status() != TransactionStatus::Idle || block_began;
            if block == Block::Idle && was_in_block {
                debug!(error = %e, "statement ended its transaction block");
                client.set_transaction_status(TransactionStatus::Idle);
                return Err(e.to_pgwire());
            }
        }
        let mut out = Vec::with_capacity(outcomes.len() + 1);
        for o in outcomes {
            match response(o, None) {
                Ok(r) => out.push(r),
                Err(e) => {
                    out.push(Response::Error(Box::new(e.to_info())));
                    return Ok(out);
                }
            }
        }
        if let Some(e) = error {
            debug!(error = %e, "statement failed");
            out.push(Response::Error(Box::new(e.to_info())));
        }
        Ok(out)
    }
}

struct Parser {
    session: Arc<Mutex<Session>>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Arc<Prepared>;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Arc<Prepared>>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = sql.to_owned();
        on_session(&self.session, move |s| s.prepare(&sql)).await.and_then(|r| r).map_err(|e| e.to_pgwire())
    }

    fn get_parameter_types(&self, stmt: &Arc<Prepared>) -> PgWireResult<Vec<Type>> {
        Ok(stmt.desc.param_pg_types())
    }

    fn get_result_schema(
        &self,
        stmt: &Arc<Prepared>,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(result_columns(stmt)
            .into_iter()
            .enumerate()
            .map(|(i, (name, ty))| {
                let f = format.map(|f| f.format_for(i)).unwrap_or(FieldFormat::Text);
                FieldInfo::new(name, None, None, ty, f)
            })
            .collect())
    }
}

fn result_columns(stmt: &Prepared) -> Vec<(String, Type)> {
    stmt.desc
        .columns
        .iter()
        .map(|(n, t)| (n.clone(), t.as_ref().map(pg_type).unwrap_or(Type::TEXT)))
        .collect()
}

struct Extended {
    session: Arc<Mutex<Session>>,
    parser: Arc<Parser>,
}

/// Reads parameter `i` of `portal` as a `ty`, then converts it to the column type it meets.
fn param(
    portal: &Portal<Arc<Prepared>>,
    i: usize,
    ty: &Type,
    column: Option<&DataType>,
) -> Result<ParamLiteral, SqlError> {
    let err = |e: PgWireError| SqlError::Param { index: i + 1, message: e.to_string() };
    let v: Option<Value> = if *ty == Type::BOOL {
        portal.parameter::<bool>(i, ty).map_err(err)?.map(Value::Bool)
    } else if *ty == Type::INT2 {
        portal.parameter::<i16>(i, ty).map_err(err)?.map(Value::I16)
    } else if *ty == Type::INT4 {
        portal.parameter::<i32>(i, ty).map_err(err)?.map(Value::I32)
    } else if *ty == Type::INT8 {
        portal.parameter::<i64>(i, ty).map_err(err)?.map(Value::I64)
    } else if *ty == Type::FLOAT4 {
        portal.parameter::<f32>(i, ty).map_err(err)?.map(Value::F32)
    } else if *ty == Type::FLOAT8 {
        portal.parameter::<f64>(i, ty).map_err(err)?.map(Value::F64)
    } else if *ty == Type::NUMERIC {
        portal.parameter::<Decimal>(i, ty).map_err(err)?.map(Value::Decimal)
    } else if *ty == Type::BYTEA {
        portal.parameter::<Vec<u8>>(i, ty).map_err(err)?.map(Value::Bytea)
    } else if *ty == Type::DATE {
        portal.parameter::<NaiveDate>(i, ty).map_err(err)?.map(Value::Date)
    } else if *ty == Type::TIMESTAMP {
        portal.parameter::<NaiveDateTime>(i, ty).map_err(err)?.map(Value::Timestamp)
    } else if *ty == Type::TIME {
        portal.parameter::<NaiveTime>(i, ty).map_err(err)?.map(Value::Time)
    } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME, Type::UNKNOWN].contains(ty) {
        // Untyped parameters arrive as text; the column they meet gives them their type.
        match portal.parameters.get(i) {
            None => return Err(SqlError::Param { index: i + 1, message: "not bound".into() }),
            Some(None) => None,
            Some(Some(b)) => Some(Value::Str(
                String::from_utf8(b.to_vec())
                    .map_err(|_| SqlError::Param { index: i + 1, message: "text is not UTF-8".into() })?,
            )),
        }
    } else {
        return Err(SqlError::Param {
            index: i + 1,
            message: format!("type {} is not supported by Triad's SQL front end", ty.name()),
        });
    };
    let v = match (v, column) {
        (None, _) => Value::Null,
        (Some(v), Some(dt)) => v
            .cast(dt)
            .map_err(|e| SqlError::Param { index: i + 1, message: format!("cannot be used as {dt}: {e}") })?,
        (Some(v), None) => v,
    };
    literal(v)
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = Arc<Prepared>;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    /// ReadyForQuery reports the session's own view of its block (see the simple handler:
    /// pgwire alone would call the session failed after a COMMIT that failed and ended it).
    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // No statement of this connection runs between Execute and Sync, so the lock is free.
        let block = self.session.lock().unwrap_or_else(|p| p.into_inner()).block();
        let status = match block {
            Block::Idle => TransactionStatus::Idle,
            Block::Open => TransactionStatus::Transaction,
            Block::Failed => TransactionStatus::Error,
        };
        client.set_transaction_status(status);
        client.portal_store().rm_portal(pgwire::api::DEFAULT_NAME);
        client.send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(status))).await?;
        client.flush().await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Arc<Prepared>>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Arc<Prepared>>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = portal.statement.statement.clone();
        let client_types = &portal.statement.parameter_types;
        let ours = prepared.desc.param_pg_types();
        let mut params = Vec::with_capacity(portal.parameter_len());
        for i in 0..portal.parameter_len() {
            let ty = client_types
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN)
                .or_else(|| ours.get(i).cloned())
                .unwrap_or(Type::TEXT);
            let column = prepared.desc.params.get(i).and_then(|c| c.as_ref());
            params.push(param(portal, i, &ty, column).map_err(|e| e.to_pgwire())?);
        }
        let stmt = prepared.clone();
        let outcome = on_session(&self.session, move |s| s.execute(&stmt.stmt, &params))
            .await
            .and_then(|r| r)
            .map_err(|e| {
                debug!(error = %e, sql = %prepared.sql, "statement failed");
                e.to_pgwire()
            })?;
        let columns = result_columns(&prepared);
        response(outcome, Some((&columns, &portal.result_column_format))).map_err(|e| e.to_pgwire())
    }
}

/// Logs where the front end listens; kept apart so `triad dev` and `triad sql` say the same.
pub fn announce(addr: SocketAddr, user: &str) {
    info!(listen = %addr, user, "SQL front end serving (PostgreSQL wire protocol)");
}
