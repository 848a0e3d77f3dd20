-- Shared by the bench's wrk scripts: at the end of a run, print one machine-readable line
-- that bench/ingest.py parses (wrk's own text report rounds and changes units).
--
-- `requests` counts completed responses; wrk counts a status above 399 in `errors.status`, so
-- the 2xx count is requests - errors.status (the intake answers no 1xx or 3xx).

function report(summary, latency, requests)
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.status, summary.errors.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max))
end
