//! `bolt-state`: the pure fold of events into state. Must never depend on capsule, fabric, dns or agent.
