"""aioproc's benchmark suite: ``make bench`` (or ``python benchmarks/run.py``).

One module per scenario (``storm``, ``seq``, ``exitdetect``, ``cancel``, ``scale``), each with a
``run(quick) -> list[Row]``; ``common`` holds what they share, ``targets`` what their children
run, ``report`` turns the rows into docs/benchmarks.md and its plots, ``run`` drives it all.
"""
