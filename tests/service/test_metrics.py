from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, Metrics


def test_loop_series_read_as_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("t_seconds", "Latency.", ["stage"], ours, buckets=LATENCY_BUCKETS)
    slow = Histogram("t_seconds", "Latency.", ["stage"], buckets=LATENCY_BUCKETS, registry=theirs)
    fast_count = LoopCounter("t_total", "Requests.", ["endpoint", "status"], ours)
    slow_count = Counter("t_total", "Requests.", ["endpoint", "status"], registry=theirs)
    # on a bound, between bounds, under the first, over the last
    values = [0.0005, 0.0003, 0.0007, 0.002, 0.0, 9.0, 0.1, 0.15, 5.0, 0.0005]
    for i, value in enumerate(values):
        stage = "ann" if i % 3 else "store"
        fast.labels(stage).observe(value)
        slow.labels(stage).observe(value)
        fast_count.labels("/score", str(200 + i % 2)).inc()
        slow_count.labels("/score", str(200 + i % 2)).inc()
    fast_count.labels("/score", "200").inc(2.5)
    slow_count.labels("/score", "200").inc(2.5)
    assert generate_latest(ours) == generate_latest(theirs)


def test_the_request_series_keep_their_names() -> None:
    metrics = Metrics()
    metrics.child(metrics.request_seconds, "/candidates").observe(0.0004)
    metrics.child(metrics.requests, "/candidates", "200").inc()
    metrics.stage("ann").observe(0.00012)
    metrics.child(metrics.vector_source, "/candidates", "stored").inc()
    read = metrics.registry.get_sample_value
    labels = {"endpoint": "/candidates", "le": "0.0005"}
    assert read("argus_request_duration_seconds_bucket", labels) == 1.0
    assert read("argus_requests_total", {"endpoint": "/candidates", "status": "200"}) == 1.0
    assert read("argus_stage_duration_seconds_sum", {"stage": "ann"}) == 0.00012
    labels = {"endpoint": "/candidates", "source": "stored"}
    assert read("argus_vector_source_total", labels) == 1.0
