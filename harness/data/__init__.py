"""What a cell trains on: the fixed random batch of the tiny tier and the real tier's QA text
(qa.jsonl ships here).
"""
