"""The audit trail: hash-chained records of every access to patient data, verified and forwarded."""
