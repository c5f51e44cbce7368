# The Python client from the appendix of desktop-api.md ("Python:" example), copied unchanged.
# The end-to-end tests drive the lab with it to prove that the contract's own client works.
# ruff: noqa
import requests
import time

class DesktopClient:
    def __init__(self, base_url, token):
        self.base_url = base_url
        self.headers = {
            'Authorization': f'Bearer {token}',
            'Content-Type': 'application/json'
        }
    
    def create_desktop(self, user_id, name, plan='BASIC'):
        response = requests.post(
            f'{self.base_url}/api/v1/desktops',
            headers=self.headers,
            json={'userId': user_id, 'name': name, 'plan': plan}
        )
        return response.json()
    
    def wait_for_desktop(self, desktop_id, max_attempts=30):
        for _ in range(max_attempts):
            response = requests.get(
                f'{self.base_url}/api/v1/desktops/{desktop_id}/status',
                headers=self.headers,
                params={'refresh': 'true'}
            )
            data = response.json()['data']
            
            if data['ready']:
                return data
            if data['status'] == 'FAILED':
                raise Exception('Desktop provisioning failed')
            
            time.sleep(5)
        
        raise Exception('Desktop provisioning timeout')
    
    def get_connection_url(self, desktop_id):
        response = requests.get(
            f'{self.base_url}/api/v1/desktops/{desktop_id}/connect',
            headers=self.headers
        )
        return response.json()['data']['connectionUrl']
