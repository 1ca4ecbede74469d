"""The canonical API: the appliance's own routes, one blueprint per module."""
