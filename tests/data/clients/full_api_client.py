# The Python integration example of the full-API document, copied verbatim up to its usage example.
# tests/test_dialect_clients.py runs it unmodified against a live appliance; do not edit it.
import requests
import json
from typing import Optional

class WhisperTranscriberClient:
    def __init__(self, base_url: str, api_key: str):
        self.base_url = base_url.rstrip('/')
        self.api_key = api_key
        self.session = requests.Session()
        self.session.headers.update({
            'X-API-Key': api_key,
            'User-Agent': 'WhisperTranscriber-Python-Client/1.0'
        })
    
    def create_job(self, file_path: str, model: str = 'medium', 
                   language: Optional[str] = None) -> dict:
        """Create a new transcription job."""
        with open(file_path, 'rb') as f:
            files = {'file': f}
            data = {'model': model}
            if language:
                data['language'] = language
            
            response = self.session.post(
                f'{self.base_url}/api/jobs/',
                files=files,
                data=data
            )
            response.raise_for_status()
            return response.json()
    
    def get_job(self, job_id: str) -> dict:
        """Get job details and transcript."""
        response = self.session.get(f'{self.base_url}/api/jobs/{job_id}')
        response.raise_for_status()
        return response.json()
    
    def wait_for_completion(self, job_id: str, poll_interval: int = 10) -> dict:
        """Wait for job completion with polling."""
        import time
        
        while True:
            job = self.get_job(job_id)
            if job['status'] in ['completed', 'failed']:
                return job
            time.sleep(poll_interval)

