from typing import List, Optional, Union

try:
    from pydantic import BaseModel
except ImportError:  # pydantic is optional
    BaseModel = None

if BaseModel is not None:
    class Response(BaseModel):
        data: Union[str, int, dict, list]
        model: str
        version: str
        list_metrics: Optional[List[dict]] = []
        topics: Optional[List[str]] = []

    class RequestPredict(BaseModel):
        data: Union[str, int, dict, list]
        names: Optional[List[str]] = []
        params: Optional[dict] = {}
