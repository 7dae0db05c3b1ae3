"""The paper's experiments as commands: degradation, shortcut options, Table 6, layer responses, reports."""
