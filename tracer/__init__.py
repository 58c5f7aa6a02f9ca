"""hoptrace: where did my packet go, and who rewrote it?"""

__version__ = "0.1.0"
