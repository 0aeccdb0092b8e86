"""Results: looking at a study and using what it found.

`figures` builds plotly figures from trial data; `report` puts them into one
self-contained HTML page; `export` retrains the best trial and writes its weights with
their spec and provenance; `exported` reads such a folder back, checks it before it
builds anything, and tests it again.
"""
