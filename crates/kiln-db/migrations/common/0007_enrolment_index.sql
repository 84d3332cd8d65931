-- Auto-enrolment counts the last minute's enrolments on every unknown machine's request:
-- by action and time, not by a scan of the whole event log.
CREATE INDEX events_action_at ON events(action, at);
