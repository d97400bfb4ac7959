//! The PostgreSQL wire protocol (v3, through `pgwire`): password login, the simple and the
//! extended query protocol, each connection with its own [`Session`].
//!
//! pgwire handles one connection's messages one after another, so a session is never used by
//! two requests at once; its mutex exists only to move it onto a blocking thread for each
//! request and back.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{stream, Sink, SinkExt};
use gluesql_core::ast::DataType;
use gluesql_core::chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use gluesql_core::data::Value;
use gluesql_core::translate::ParamLiteral;
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuthStartupHandler};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    send_execution_response, send_query_response, send_ready_for_query, ExtendedQueryHandler,
    SimpleQueryHandler,
};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::extendedquery::Sync as PgSync;
use pgwire::messages::response::{EmptyQueryResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
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
        // A stranger is challenged like anyone else, against a password nobody knows, so a
        // wrong user name gets the answer a wrong password gets: which users exist stays secret.
        let password = if user == self.user {
            self.password.clone()
        } else {
            format!("{:032x}", rand::random::<u128>())
        };
        let salt: [u8; 4] = rand::random();
        Ok(Password::new(Some(salt.to_vec()), hash_md5_password(user, &password, &salt).into_bytes()))
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
                    if out_of_descriptors(&e) {
                        // Accepting again at once fails again until a connection closes; pause
                        // instead of spinning a core on it.
                        tokio::time::sleep(DESCRIPTOR_BACKOFF).await;
                    }
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
        || out_of_descriptors(e)
}

/// EMFILE or ENFILE: out of file descriptors for now, not forever.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// How long the accept loop waits after running out of descriptors.
const DESCRIPTOR_BACKOFF: Duration = Duration::from_millis(50);

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
    let shared = session.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    })
    .await
    // A statement that panicked may have written part of its changes into the open
    // transaction: failing it drops them (outside a block) or fails the block, so no later
    // COMMIT carries them.
    .map_err(|e| failed(session, SqlError::Internal(format!("statement task failed: {e}"))))
}

/// Reports an error that stopped a statement outside the session's own code (its Parse, a
/// Bind value, a result that cannot be sent, a panic): as with any error, a block it happened
/// in is failed, so a later COMMIT cannot commit the statements before it.
fn failed(session: &Arc<Mutex<Session>>, e: SqlError) -> SqlError {
    session.lock().unwrap_or_else(|p| p.into_inner()).fail(e)
}

/// The status byte of ReadyForQuery for where the session stands.
fn status_of(block: Block) -> TransactionStatus {
    match block {
        Block::Idle => TransactionStatus::Idle,
        Block::Open => TransactionStatus::Transaction,
        Block::Failed => TransactionStatus::Error,
    }
}

fn block_of(session: &Arc<Mutex<Session>>) -> Block {
    session.lock().unwrap_or_else(|p| p.into_inner()).block()
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

/// The format of each of `n` result columns, or of `n` parameters, that a Bind asked for.
/// pgwire keeps the codes as sent and would index past the end of a list too short; PostgreSQL
/// refuses a list that is neither one code for all nor one per column, and so do we.
fn formats(format: &Format, n: usize, what: &str) -> Result<Vec<FieldFormat>, SqlError> {
    if let Format::Individual(codes) = format {
        if codes.len() != n {
            return Err(SqlError::Protocol(format!(
                "bind message has {} {what} formats but {n} {what}s",
                codes.len()
            )));
        }
        if let Some(bad) = codes.iter().find(|c| !(0..=1).contains(*c)) {
            return Err(SqlError::Protocol(format!("unsupported format code: {bad}")));
        }
    }
    Ok((0..n).map(|i| format.format_for(i)).collect())
}

/// Result columns as the statement described them, with the format Bind asked for each.
type Described<'a> = (&'a [(String, Type)], &'a [FieldFormat]);

fn response(o: Outcome, formats: Option<Described<'_>>) -> Result<Response, SqlError> {
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
                Some((described, formats)) => {
                    if described.len() != labels.len() {
                        return Err(SqlError::Encode(format!(
                            "the statement returned {} columns but {} were described; run it with the simple query protocol",
                            labels.len(),
                            described.len()
                        )));
                    }
                    described
                        .iter()
                        .zip(formats)
                        .map(|((name, ty), f)| FieldInfo::new(name.clone(), None, None, ty.clone(), *f))
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

impl Simple {
    /// Runs a simple-protocol query string: the responses to send and where the session
    /// stands afterwards.
    async fn run(&self, query: &str) -> (Vec<Response>, Block) {
        let sql = query.to_owned();
        let (outcomes, error) = match on_session(&self.session, move |s| s.simple(&sql)).await {
            Ok(r) => r,
            Err(e) => (vec![], Some(e)),
        };
        if outcomes.is_empty() && error.is_none() {
            // Only blanks, semicolons or comments.
            return (vec![Response::EmptyQuery], block_of(&self.session));
        }
        let mut out = Vec::with_capacity(outcomes.len() + 1);
        for o in outcomes {
            match response(o, None) {
                Ok(r) => out.push(r),
                Err(e) => {
                    let e = failed(&self.session, e);
                    out.push(Response::Error(Box::new(e.to_info())));
                    return (out, block_of(&self.session));
                }
            }
        }
        if let Some(e) = error {
            debug!(error = %e, "statement failed");
            out.push(Response::Error(Box::new(e.to_info())));
        }
        (out, block_of(&self.session))
    }
}

#[async_trait]
impl SimpleQueryHandler for Simple {
    /// pgwire would derive ReadyForQuery's status from the responses; ours reports the
    /// session's own view of its block, which the responses cannot always show: a COMMIT that
    /// fails ends the block (drivers that track the status, like psycopg, must then see it
    /// idle, or they take their next BEGIN for a nested one); ROLLBACK AND CHAIN leaves a
    /// failed block open and healthy; COMMIT AND CHAIN whose next block could not begin leaves
    /// it failed.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let (responses, block) = self.run(&query.query).await;
        for r in responses {
            match r {
                Response::EmptyQuery => {
                    client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?
                }
                Response::Query(rows) => send_query_response(client, rows, true).await?,
                Response::Execution(tag)
                | Response::TransactionStart(tag)
                | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
                Response::Error(e) => client.feed(PgWireBackendMessage::ErrorResponse((*e).into())).await?,
                // The session never answers with COPY; should that change, say so rather than
                // leave the client waiting for data that never comes.
                Response::CopyIn(_) | Response::CopyOut(_) | Response::CopyBoth(_) => {
                    let e = SqlError::Unsupported("COPY".into());
                    client.feed(PgWireBackendMessage::ErrorResponse(e.to_info().into())).await?
                }
            }
        }
        let status = status_of(block);
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await
    }

    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(self.run(query).await.0)
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
        let columns = result_columns(stmt);
        if columns.is_empty() {
            // Nothing to format: result format codes are ignored, as in PostgreSQL.
            return Ok(vec![]);
        }
        let formats = formats(format.unwrap_or(&Format::UnifiedText), columns.len(), "result")
            .map_err(|e| failed(&self.session, e).to_pgwire())?;
        Ok(columns
            .into_iter()
            .zip(formats)
            .map(|((name, ty), f)| FieldInfo::new(name, None, None, ty, f))
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
        let status = status_of(block_of(&self.session));
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
        let fail = |e: SqlError| failed(&self.session, e).to_pgwire();
        let prepared = portal.statement.statement.clone();
        let columns = result_columns(&prepared);
        formats(&portal.parameter_format, portal.parameter_len(), "parameter").map_err(fail)?;
        // A statement without result columns ignores result formats, as in PostgreSQL.
        let result_formats = if columns.is_empty() {
            vec![]
        } else {
            formats(&portal.result_column_format, columns.len(), "result").map_err(fail)?
        };
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
            params.push(param(portal, i, &ty, column).map_err(fail)?);
        }
        let stmt = prepared.clone();
        let outcome = on_session(&self.session, move |s| s.execute(&stmt.stmt, &params))
            .await
            .and_then(|r| r)
            .map_err(|e| {
                debug!(error = %e, sql = %prepared.sql, "statement failed");
                e.to_pgwire()
            })?;
        response(outcome, Some((&columns, &result_formats))).map_err(fail)
    }
}

/// Logs where the front end listens; kept apart so `triad dev` and `triad sql` say the same.
pub fn announce(addr: SocketAddr, user: &str) {
    info!(listen = %addr, user, "SQL front end serving (PostgreSQL wire protocol)");
}
