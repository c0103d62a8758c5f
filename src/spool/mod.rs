//! Durable spool (owned by the integrator).
