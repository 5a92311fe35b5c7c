"""A class that reports on its process: the environment it runs in, its BLAS thread pools, and
whether two calls run at once. Its load() takes SIGTERM, as some libraries do."""
import os
import signal
import sys
import threading


class Probe:
    __name__ = "probe"
    __version__ = "1"

    def load(self):
        signal.signal(signal.SIGTERM, lambda *args: print("the class's own SIGTERM handler ran"))
        self.both_inside = threading.Barrier(2, timeout=60)

    def predict(self, X, names):
        if names and names[0] == "together":
            # Passes only when another call is inside predict at the same time: the calls run
            # on two Python threads, and waiting here releases the GIL.
            self.both_inside.wait()
            return {"target": {"thread": threading.current_thread().name}}
        import numpy
        from threadpoolctl import threadpool_info

        pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
        return {"target": {
            "prefix": sys.prefix,
            "executable": sys.executable,
            "numpy": numpy.__file__,
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "openblas": os.environ.get("OPENBLAS_NUM_THREADS"),
            "pools": pools,
        }}
