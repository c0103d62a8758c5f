//! `/metrics`, `/healthz`, `/readyz` (owned by the integrator; see lib.rs).
