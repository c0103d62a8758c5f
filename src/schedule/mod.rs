//! Delivery scheduling (owned by the integrator).
