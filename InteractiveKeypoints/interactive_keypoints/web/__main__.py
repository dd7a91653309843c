"""``python -m interactive_keypoints.web [--host] [--port] [--model DIR]``"""

from .launcher import main

main()
