-- A refused action handed to a human: the escalation's params as a JSON object, NULL when
-- nothing was escalated (ActionResult version 2's `escalation`).
ALTER TABLE actions ADD COLUMN escalation TEXT;
