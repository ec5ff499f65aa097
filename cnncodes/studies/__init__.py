"""Studies over many fits: the four-strategy comparison, the layer sweep, and reports."""
