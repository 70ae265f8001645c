"""The probes that answered their question; the product never imports them."""
