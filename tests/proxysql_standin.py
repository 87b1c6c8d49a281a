"""A STAND-IN for ProxySQL's admin interface, for tests: ProxySQL 2.6.4's own admin table schemas
(tests/fixtures/proxysql_admin_schema.sql, copied from its source) on Python's SQLite. It is NOT ProxySQL: no
monitor, no routing, no client protocol. What it emulates, and only that:

  * `LOAD <module> TO RUNTIME` copies the module's memory tables to runtime_* (runtime_mysql_users gets each user
    twice, frontend and backend, as ProxySQL shows it); `SAVE <module> TO DISK` copies them to disk_* tables;
  * an `UPDATE global_variables` that changes no row fails (ProxySQL knows every variable: an unknown name would
    silently do nothing there, here it is an error);
  * `LOAD MYSQL VARIABLES TO RUNTIME` refuses a new `mysql-interfaces` while one is bound and resets the memory
    table to the running value (lib/MySQL_Thread.cpp set_variable "interfaces"; lib/ProxySQL_Admin.cpp "Impossible
    to set variable ... Resetting to current"); `restart()` starts again from the disk_* tables, as ProxySQL
    starts from proxysql.db;
  * `galera_monitor(...)`: what ProxySQL's Galera monitor does to runtime_mysql_servers (moves a writer's peers to
    the backup writer and reader hostgroups, a dead node to the offline one).

Used in-process by tests/test_proxysql_render.py and as the `mariadb` client stub run by keybuzz-proxysql there
(`python -m proxysql_standin` reads `-e SQL` or stdin, prints rows as `mariadb --batch --raw` does).
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from pathlib import Path

SCHEMA = Path(__file__).parent / "fixtures" / "proxysql_admin_schema.sql"
_ADMIN_COMMAND = re.compile(r"(LOAD|SAVE) (MYSQL SERVERS|MYSQL USERS|MYSQL QUERY RULES|MYSQL VARIABLES|ADMIN VARIABLES)"
                            r" TO (RUNTIME|DISK)", re.IGNORECASE)
MODULE_TABLES = {"MYSQL SERVERS": ("mysql_servers", "mysql_galera_hostgroups"), "MYSQL USERS": ("mysql_users",),
                 "MYSQL QUERY RULES": ("mysql_query_rules",)}
_USER_COLUMNS = ("username, password, active, use_ssl, default_hostgroup, default_schema, schema_locked, "
                 "transaction_persistent, fast_forward, {backend}, {frontend}, max_connections, attributes, comment")


class AdminSchemaStandIn:
    def __init__(self, path: str | os.PathLike = ":memory:", create: bool = True):
        self.db = sqlite3.connect(str(path))
        if create:
            self.db.executescript(SCHEMA.read_text())
            # at start ProxySQL runs with its defaults
            self.db.execute("INSERT INTO runtime_global_variables SELECT * FROM global_variables")
            self.db.commit()

    def execute(self, statement: str) -> list[tuple]:
        m = _ADMIN_COMMAND.fullmatch(statement.strip())
        if m:
            self._admin_command(m.group(1).upper(), m.group(2).upper(), m.group(3).upper())
            self.db.commit()
            return []
        cur = self.db.execute(statement)
        if re.match(r"\s*UPDATE\s+global_variables\b", statement, re.IGNORECASE) and cur.rowcount != 1:
            raise sqlite3.IntegrityError(f"ProxySQL has no such variable: {statement[:120]}")
        rows = cur.fetchall()
        self.db.commit()
        return rows

    def run_file(self, text: str) -> None:
        """Statements one per line, each ending with `;` (keybuzz.proxysql.admin.sql_file)."""
        for line in text.splitlines():
            if line.strip():
                assert line.endswith(";"), line[:80]
                self.execute(line[:-1])

    def _admin_command(self, verb: str, module: str, where: str) -> None:
        if (verb, where) not in (("LOAD", "RUNTIME"), ("SAVE", "DISK")):
            raise sqlite3.OperationalError(f"stand-in: {verb} ... TO {where} not emulated")
        if module.endswith("VARIABLES"):
            prefix = module.split()[0].lower() + "-%"
            target = "runtime_global_variables" if verb == "LOAD" else "disk_global_variables"
            self.db.execute("CREATE TABLE IF NOT EXISTS disk_global_variables AS SELECT * FROM global_variables "
                            "WHERE 0")
            if verb == "LOAD":
                bound = self.db.execute("SELECT variable_value FROM runtime_global_variables WHERE "
                                        "variable_name='mysql-interfaces'").fetchone()
                if prefix == "mysql-%" and bound and bound[0]:
                    self.db.execute("UPDATE global_variables SET variable_value=? WHERE "
                                    "variable_name='mysql-interfaces'", bound)
            self.db.execute(f"DELETE FROM {target} WHERE variable_name LIKE ?", (prefix,))
            self.db.execute(f"INSERT INTO {target} SELECT * FROM global_variables WHERE variable_name LIKE ?",
                            (prefix,))
            return
        for table in MODULE_TABLES[module]:
            if verb == "SAVE":
                self.db.execute(f"CREATE TABLE IF NOT EXISTS disk_{table} AS SELECT * FROM {table} WHERE 0")
                self.db.execute(f"DELETE FROM disk_{table}")
                self.db.execute(f"INSERT INTO disk_{table} SELECT * FROM {table}")
            elif table == "mysql_users":
                self.db.execute("DELETE FROM runtime_mysql_users")
                for backend, frontend in ((0, 1), (1, 0)):
                    cols = _USER_COLUMNS.format(backend=backend, frontend=frontend)
                    self.db.execute(f"INSERT INTO runtime_mysql_users SELECT {cols} FROM mysql_users")
            else:
                self.db.execute(f"DELETE FROM runtime_{table}")
                self.db.execute(f"INSERT INTO runtime_{table} SELECT * FROM {table}")

    def restart(self) -> None:
        """ProxySQL restarted with its proxysql.db: memory and runtime from disk (listeners bound anew)."""
        tables = ["global_variables"] + [t for ts in MODULE_TABLES.values() for t in ts]
        for table in tables:
            if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name=?", (f"disk_{table}",)).fetchone():
                continue
            if table == "global_variables":
                self.db.execute("INSERT OR REPLACE INTO global_variables SELECT * FROM disk_global_variables")
            else:
                self.db.execute(f"DELETE FROM {table}")
                self.db.execute(f"INSERT INTO {table} SELECT * FROM disk_{table}")
        self.db.execute("DELETE FROM runtime_global_variables")
        self.db.commit()
        for module in ("MYSQL VARIABLES", "ADMIN VARIABLES", "MYSQL USERS", "MYSQL SERVERS", "MYSQL QUERY RULES"):
            self._admin_command("LOAD", module, "RUNTIME")
        self.db.commit()

    def galera_monitor(self, writer: str, offline: tuple[str, ...] = (), backup_hg: int = 20, reader_hg: int = 30,
                       offline_hg: int = 9999, writer_hg: int = 10) -> None:
        """Runtime rows as ProxySQL's Galera monitor leaves them with writer_is_also_reader=2: `writer` alone in
        the writer hostgroup, the other healthy nodes in the backup writer and reader hostgroups, `offline` ones in
        the offline hostgroup."""
        rows = self.db.execute("SELECT * FROM runtime_mysql_servers").fetchall()
        self.db.execute("DELETE FROM runtime_mysql_servers")
        seen = set()
        for row in rows:
            host = row[1]
            if host in seen:
                continue
            seen.add(host)
            groups = ([offline_hg] if host in offline else [writer_hg] if host == writer else [backup_hg, reader_hg])
            for hg in groups:
                self.db.execute("INSERT INTO runtime_mysql_servers VALUES (" + ", ".join("?" * len(row)) + ")",
                                (hg, *row[1:]))
        self.db.commit()


def _mariadb_client_stub(argv: list[str]) -> int:
    """`mariadb --defaults-extra-file=F [options] [-e SQL]` against the stand-in database $PROXYSQL_STANDIN_DB."""
    if not argv or not argv[0].startswith("--defaults-extra-file="):
        print("stub: --defaults-extra-file must come first (as the real client requires)", file=sys.stderr)
        return 2
    with open(os.environ["PROXYSQL_STANDIN_ARGV_LOG"], "a") as log:
        log.write(" ".join(argv) + "\n")
    standin = AdminSchemaStandIn(os.environ["PROXYSQL_STANDIN_DB"], create=False)
    if "-e" in argv:
        rows = standin.execute(argv[argv.index("-e") + 1])
        for row in rows:
            print("\t".join("NULL" if v is None else str(v) for v in row))
    else:
        standin.run_file(sys.stdin.read())
    return 0


if __name__ == "__main__":
    sys.exit(_mariadb_client_stub(sys.argv[1:]))
