"""Block Kit action listeners."""
