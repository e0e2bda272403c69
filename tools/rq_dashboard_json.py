"""rq-dashboard 0.9.0 whose worker list reads running jobs with the JSON serializer.

rq-dashboard's `/data/workers.json` (its Workers tab) builds `rq.Worker.all(connection)` without
a serializer, so a worker's current job is read with pickle and the page answers 500 while any
JSON job runs, whatever `--json` says (RQ's own workers too). This runs rq-dashboard with that one
call given the JSON serializer. rq-dashboard is not a dependency of this project; in its own
environment (it also needs `six`, which it does not declare):

    pip install rq-dashboard==0.9.0 six
    python tools/rq_dashboard_json.py --json --redis-url redis://127.0.0.1:6379/0

See docs/rq-suite.md.
"""

import rq_dashboard.web
from rq import Worker
from rq.serializers import JSONSerializer


class JSONWorker(Worker):
    @classmethod
    def all(cls, *args, **kwargs):
        kwargs.setdefault("serializer", JSONSerializer)
        return super().all(*args, **kwargs)


rq_dashboard.web.Worker = JSONWorker

if __name__ == "__main__":
    from rq_dashboard.cli import main

    main()
