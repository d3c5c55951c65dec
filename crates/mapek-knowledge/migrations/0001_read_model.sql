-- The read model: one set of statements that Postgres and SQLite both accept.
-- Times are Unix milliseconds of event time (BIGINT); JSON is stored as TEXT so that
-- both engines read it the same way (Postgres: `column::jsonb` in queries).

-- The latest telemetry of each node (the greatest ts_ms; on a tie, the later in the log).
CREATE TABLE IF NOT EXISTS nodes (
    node        TEXT PRIMARY KEY,
    ts_ms       BIGINT NOT NULL,
    health      TEXT NOT NULL,
    cpu         DOUBLE PRECISION,
    mem         DOUBLE PRECISION,
    latency_ms  DOUBLE PRECISION,
    loss        DOUBLE PRECISION,
    links_total BIGINT NOT NULL,
    links_down  BIGINT NOT NULL,
    metrics     TEXT NOT NULL,
    event_id    TEXT NOT NULL
);

-- One row per incident, folded from its symptoms.
CREATE TABLE IF NOT EXISTS incidents (
    incident_id  TEXT PRIMARY KEY,
    node         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    peer         TEXT,
    state        TEXT NOT NULL,
    severity     DOUBLE PRECISION NOT NULL,
    max_severity DOUBLE PRECISION NOT NULL,
    opened_ms    BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    resolved_ms  BIGINT,
    summary      TEXT NOT NULL,
    symptoms     BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_node ON incidents (node, opened_ms);
CREATE INDEX IF NOT EXISTS incidents_by_state ON incidents (state, opened_ms);

-- The timeline of each incident: every symptom as analyze published it.
CREATE TABLE IF NOT EXISTS symptoms (
    symptom_id  TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    node        TEXT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    severity    DOUBLE PRECISION NOT NULL,
    peer        TEXT,
    evidence    TEXT NOT NULL,
    summary     TEXT NOT NULL,
    caused_by   TEXT NOT NULL,
    stream_seq  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS symptoms_by_incident ON symptoms (incident_id, ts_ms);

-- Each decision with why it was taken and what it consulted.
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY,
    symptom_id  TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    node        TEXT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    action      TEXT NOT NULL,
    peer        TEXT,
    service     TEXT,
    params      TEXT NOT NULL,
    rule        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    knowledge   TEXT NOT NULL,
    stream_seq  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_incident ON decisions (incident_id, ts_ms);

-- What the executor did with each decision.
CREATE TABLE IF NOT EXISTS actions (
    result_id   TEXT PRIMARY KEY,
    decision_id TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    node        TEXT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    action      TEXT NOT NULL,
    peer        TEXT,
    status      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    dry_run     BIGINT NOT NULL, -- 1 when the executor only pretended (SQLite has no BOOLEAN through sqlx::Any)
    stream_seq  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_incident ON actions (incident_id, ts_ms);
CREATE INDEX IF NOT EXISTS actions_by_time ON actions (ts_ms);

-- Whether each action cleared its incident.
CREATE TABLE IF NOT EXISTS outcomes (
    outcome_id  TEXT PRIMARY KEY,
    decision_id TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    node        TEXT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    result      TEXT NOT NULL,
    recovery_ms BIGINT,
    detail      TEXT NOT NULL,
    stream_seq  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_by_incident ON outcomes (incident_id);

-- The last stream sequence each projection applied, written in the same transaction as
-- its rows: the projection resumes after it, whatever the consumer's ack floor says.
CREATE TABLE IF NOT EXISTS projection_offsets (
    stream   TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    applied  BIGINT NOT NULL,
    skipped  BIGINT NOT NULL
);
