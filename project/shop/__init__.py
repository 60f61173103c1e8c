"""The example domain: orders, inventory and payments."""
