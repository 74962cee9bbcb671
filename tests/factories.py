"""factory-boy factories for the credential store (shared by every test module)."""

from __future__ import annotations

import json
from functools import lru_cache

import factory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from factory.django import DjangoModelFactory

from credentials.models import Credential, CredentialType, ModelAlias, ProviderModel


@lru_cache(maxsize=1)
def _private_key_pem() -> str:
    # A real RSA key, so Vertex tests can sign JWTs with google-auth; generated once per run.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def service_account_info(project: str = "test-project", token_uri: str = "https://oauth2.googleapis.com/token") -> dict:
    """A service-account key file's content with a working (throwaway) private key."""
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef",
        "private_key": _private_key_pem(),
        "client_email": f"router-test@{project}.iam.gserviceaccount.com",
        "client_id": "123456789",
        "token_uri": token_uri,
    }


def service_account_json(**kwargs: str) -> str:
    return json.dumps(service_account_info(**kwargs), indent=2)


class CredentialFactory(DjangoModelFactory):
    class Meta:
        model = Credential

    class Params:
        anthropic = factory.Trait(type=CredentialType.ANTHROPIC,
                                  api_key=factory.Sequence(lambda n: f"sk-ant-test-{n:06d}-secret"))
        gemini = factory.Trait(type=CredentialType.GEMINI, api_key=factory.Sequence(lambda n: f"AIzaTest{n:030d}"))
        vertex = factory.Trait(
            type=CredentialType.VERTEX, api_key="", project_id="test-project", location="us-central1",
            service_account_json=factory.LazyFunction(service_account_json),
        )
        proxy = factory.Trait(type=CredentialType.PROXY, base_url="http://127.0.0.1:9")
        demo = factory.Trait(type=CredentialType.DEMO, api_key="")

    name = factory.Sequence(lambda n: f"cred-{n}")
    type = CredentialType.OPENAI
    api_key = factory.Sequence(lambda n: f"sk-test-{n:06d}-0123456789abcdef")


class ProviderModelFactory(DjangoModelFactory):
    class Meta:
        model = ProviderModel

    name = factory.Sequence(lambda n: f"model-{n}")
    credential = factory.SubFactory(CredentialFactory)


class ModelAliasFactory(DjangoModelFactory):
    class Meta:
        model = ModelAlias

    alias = factory.Sequence(lambda n: f"alias-{n}")
    targets = factory.LazyFunction(lambda: ["gpt-4o"])
