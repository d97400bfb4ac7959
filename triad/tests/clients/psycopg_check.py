"""psycopg 3 against Triad's SQL front end, the way a Python application uses it.

Run by triad/tests/sql.rs with the repository's venv (scripts/setup.sh installs psycopg there):
    .venv/bin/python triad/tests/clients/psycopg_check.py "host=127.0.0.1 port=... user=... password=..."
Exits non-zero, with the failing check, on any deviation.
"""

import sys
import threading

import psycopg
from psycopg import errors

DSN = sys.argv[1]


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def connect():
    # autocommit: every statement is its own transaction unless a `transaction()` block (BEGIN
    # ... COMMIT) says otherwise, and psycopg never opens a savepoint on its own.
    return psycopg.connect(DSN, autocommit=True)


with connect() as conn:
    conn.execute("CREATE TABLE py_items (id INT PRIMARY KEY, name TEXT, price FLOAT, qty INT)")
    with conn.cursor() as cur:
        # Server-side parameters (extended protocol), Python types chosen by psycopg.
        cur.executemany(
            "INSERT INTO py_items VALUES (%s, %s, %s, %s)",
            [(i, f"item {i}", i * 1.5, i % 3) for i in range(1, 21)],
        )
        cur.execute("SELECT name, price, qty FROM py_items WHERE id = %s", (7,))
        check(cur.fetchone(), ("item 7", 10.5, 1), "point select")
        cur.execute("SELECT COUNT(*), SUM(qty) FROM py_items WHERE price > %s", (15.0,))
        check(cur.fetchone(), (10, sum(i % 3 for i in range(11, 21))), "aggregate with a parameter")
        cur.execute("SELECT id FROM py_items WHERE name = %s OR id = %s ORDER BY id", ("item 3", 12))
        check([r[0] for r in cur.fetchall()], [3, 12], "text and int parameters")
        # A statement psycopg prepares on the server and reuses.
        for i in (4, 5, 6):
            cur.execute("SELECT qty FROM py_items WHERE id = %s", (i,), prepare=True)
            check(cur.fetchone(), (i % 3,), f"prepared select {i}")
    # Binary results.
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, name, price FROM py_items WHERE id = %s", (2,))
        check(cur.fetchone(), (2, "item 2", 3.0), "binary row")

    # BEGIN ... COMMIT, and a block rolled back by an exception.
    with conn.transaction():
        conn.execute("UPDATE py_items SET qty = qty + 10 WHERE id = %s", (1,))
        conn.execute("DELETE FROM py_items WHERE id = %s", (20,))
    try:
        with conn.transaction():
            conn.execute("UPDATE py_items SET qty = 999 WHERE id = %s", (2,))
            raise RuntimeError("roll this back")
    except RuntimeError:
        pass
    row = conn.execute("SELECT qty FROM py_items WHERE id = 1").fetchone()
    check(row, (11,), "committed block")
    row = conn.execute("SELECT qty FROM py_items WHERE id = 2").fetchone()
    check(row, (2,), "rolled-back block")
    row = conn.execute("SELECT COUNT(*) FROM py_items").fetchone()
    check(row, (19,), "row count after delete")

    # Errors a driver maps to its exception classes, connection still usable afterwards.
    try:
        conn.execute("SELECT * FROM no_such_table")
        raise AssertionError("selecting from a missing table succeeded")
    except psycopg.Error as e:
        check(e.sqlstate is not None, True, "sqlstate on an error")
    check(conn.execute("SELECT 1").fetchone(), (1,), "connection usable after an error")

# Two sessions update one row; the second COMMIT is a serialization failure (40001).
a = connect()
a.execute("CREATE TABLE py_counter (id INT PRIMARY KEY, n INT)")
a.execute("INSERT INTO py_counter VALUES (1, 0)")
first = connect()
second = connect()
first.execute("BEGIN")
second.execute("BEGIN")
check(first.execute("SELECT n FROM py_counter WHERE id = 1").fetchone(), (0,), "first reads")
check(second.execute("SELECT n FROM py_counter WHERE id = 1").fetchone(), (0,), "second reads")
first.execute("UPDATE py_counter SET n = 1 WHERE id = 1")
second.execute("UPDATE py_counter SET n = 1 WHERE id = 1")
first.execute("COMMIT")
try:
    second.execute("COMMIT")
    raise AssertionError("the second of two conflicting commits succeeded")
except errors.SerializationFailure as e:
    check(e.sqlstate, "40001", "conflict sqlstate")
    check("OC000" in str(e), True, f"conflict message names OC000: {e}")
first.close()
second.close()

# Retry loops, as applications write them: no increment lost.
WORKERS, EACH = 4, 8
failures = []


def worker():
    try:
        with connect() as c:
            for _ in range(EACH):
                while True:
                    try:
                        with c.transaction():
                            (n,) = c.execute("SELECT n FROM py_counter WHERE id = 1").fetchone()
                            c.execute("UPDATE py_counter SET n = %s WHERE id = 1", (n + 1,))
                        break
                    except errors.SerializationFailure:
                        continue
    except Exception as e:  # noqa: BLE001 - reported by the main thread
        failures.append(repr(e))


threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    raise AssertionError(f"workers failed: {failures}")
check(a.execute("SELECT n FROM py_counter WHERE id = 1").fetchone(), (1 + WORKERS * EACH,), "counter")
a.close()
print("psycopg", psycopg.__version__, "ok")
