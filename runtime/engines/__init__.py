"""The engines that run a whole table: :mod:`.local` (this process, resumable) and :mod:`.ray` (Ray Data), both
scoring through :mod:`.chunk`. Each plans first (every check that needs no model) and then executes."""
