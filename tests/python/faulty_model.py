"""A class that fails on request: predict raises, or sleeps, as the feature names ask; load()
fails while the file named by MLDEPLOY_TEST_FAIL_FILE exists."""
import os
import time


class Faulty:
    __name__ = "faulty"
    __version__ = "1"

    def load(self):
        flag = os.environ.get("MLDEPLOY_TEST_FAIL_FILE")
        if flag and os.path.exists(flag):
            raise FileNotFoundError("model.pkl is missing (the test asked load() to fail)")

    def predict(self, X, names):
        if names and names[0] == "raise":
            return self._inner(X)
        if names and names[0] == "sleep":
            time.sleep(float(X[0][0]))
        if names and names[0] == "exit":
            raise SystemExit(3)
        return {"target": {"pid": os.getpid(), "sum": X.sum()}, "input": X}

    def _inner(self, X):
        try:
            {}["missing"]
        except KeyError as e:
            raise ValueError("bad input of shape %s" % (X.shape,)) from e
