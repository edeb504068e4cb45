"""GPU facts shared by every part: NVML access and the clock-event (throttle) reasons.

A shared module below the parts: the agent, the rules engine, burn-in and the dashboards
import it; it imports none of them. ``reasons`` is pure (no NVML); ``nvml`` is the only
module in sentinel that calls NVML.
"""
