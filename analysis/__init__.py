"""Analysis: online statistics over counts (`stats`), the SQL that produces those counts
(`queries`), the paper's offline metrics (`offline`), the promotion gate (`gate`) and reports.

Statistics are pure functions over sufficient statistics and never import the database.
Depends on `models` only.
"""
