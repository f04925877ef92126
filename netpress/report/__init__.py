"""Reports: plots (.png, .svg or .pdf by suffix) of what a run did."""

from netpress.report.plots import plot_allocation, plot_curve, save_figure

__all__ = ["plot_allocation", "plot_curve", "save_figure"]
