"""What runs the draft model inside the drafter process (see minedraft.drafter.server)."""
