"""Model understanding: channel groups and the surgery that rebuilds layers with new shapes."""
