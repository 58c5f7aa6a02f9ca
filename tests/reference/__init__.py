"""Python references the core (crates/) is held to, byte for byte, by differential tests."""
