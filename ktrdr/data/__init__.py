"""The data domain: timeframes, trading calendars, bar storage, validation, gap analysis, segment
planning and the DataLoadingJob. Plain Python with no NATS in it; the job-manager actor drives it."""
