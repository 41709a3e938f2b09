"""Service benchmarks: a closed-loop HTTP load generator (`loadgen`), a freshness probe (`freshness`),
helpers that start and stop `candgen serve` (`service`) and a private redis-server (`redisproc`) for
them. Used by `candgen bench ...`."""
