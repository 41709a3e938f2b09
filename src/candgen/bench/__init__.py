"""Service benchmarks: a closed-loop HTTP load generator (`loadgen`), a freshness probe (`freshness`) and
a helper that starts and stops `candgen serve` for them (`service`). Used by `candgen bench ...`."""
