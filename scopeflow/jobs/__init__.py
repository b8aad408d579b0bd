"""Jobs: workflows that acquire, read results and act, run by one runner on any scope."""
