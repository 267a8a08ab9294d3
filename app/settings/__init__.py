"""The org's policy settings: validation, reading and audited changes."""
