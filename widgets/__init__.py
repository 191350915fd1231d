"""Qt views over plain engine data (dataclasses, dicts, floats); no nn.Module inside a widget."""
