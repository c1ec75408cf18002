-- docker-compose: the warehouse lives beside Dagster's own storage database.
CREATE DATABASE warehouse;
