-- Login lockout (issue 9) shares `auth_failures` with second-factor codes:
-- subjects `login:<normalised username>` (known and unknown names alike)
-- beside `mfa:<user id>`. Counters without a failure for
-- `rate_limits.lockout_reset` are purged by a background job, which this
-- index serves.
CREATE INDEX auth_failures_updated ON auth_failures (updated_at);
