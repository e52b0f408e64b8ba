"""Request routing on the device: sensitivity, policy, tiers, cascade and context."""
