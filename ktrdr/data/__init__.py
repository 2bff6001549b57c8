"""The data domain: timeframes, trading calendars, bar storage, validation, gap analysis, segment
planning and the DataLoadingJob. Plain Python with no NATS in it, but for the adapters that keep its
series in the BARS bucket (bars_store, series_lease); the job-manager actor drives it."""
