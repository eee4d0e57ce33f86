"""The Streamlit chat for students and the inspection pages for teachers."""
