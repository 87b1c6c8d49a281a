"""MariaDB Galera layer (design §A, §F): settings, bootstrap decision, client, checks, testbed."""
