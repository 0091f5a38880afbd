"""cxrdx inside the engines people already run (Ray Data): building blocks and the ``--engine ray`` job."""
