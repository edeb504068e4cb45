"""sentinel.agent.collectors."""
