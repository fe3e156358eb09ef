#!/usr/bin/env bash
# Throwaway CA, certificates and tokens for trying the secured deployment (deploy/README.md, Security). Not for
# production: the CA's key lies beside what it signed, and everything expires in 30 days.
#   deploy/dev-certs.sh OUTDIR [NAMESPACE]      (NAMESPACE: where vaeserve runs, default vaeserve)
# Writes into OUTDIR: ca.crt ca.key; tls.crt tls.key (the server); client.crt client.key (for overlays/mtls);
# locust.token, client.token and tokens (both, one a line: the server's vaeserve-auth).
set -euo pipefail
out=${1:?usage: deploy/dev-certs.sh OUTDIR [NAMESPACE]}
ns=${2:-vaeserve}
days=30
mkdir -p "$out"
cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
# sign NAME SUBJECT EXTENSIONS: NAME.crt for NAME.key, signed by the CA.
sign() {
	openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
	printf '%s\n' "$3" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -extfile "$1.ext" \
		-out "$1.crt"
	rm -f "$1.csr" "$1.ext"
}

key ca.key
openssl req -x509 -new -key ca.key -subj "/CN=vaeserve throwaway CA" -days "$days" -out ca.crt \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# Every name a client may dial: the Services (short, namespaced and full names) and localhost for port-forward.
names="DNS:localhost,IP:127.0.0.1"
for svc in vaeserve vaeserve-headless; do
	names+=",DNS:$svc,DNS:$svc.$ns,DNS:$svc.$ns.svc,DNS:$svc.$ns.svc.cluster.local"
done
key tls.key
sign tls "/CN=vaeserve" "subjectAltName=$names
extendedKeyUsage=serverAuth"

key client.key
sign client "/CN=vaeserve-client" "extendedKeyUsage=clientAuth"
rm -f ca.srl

# Bearer tokens: one per client, so each can be revoked alone.
openssl rand -hex 32 >locust.token
openssl rand -hex 32 >client.token
cat locust.token client.token >tokens
chmod 600 ./*.key ./*.token tokens
echo "wrote $(ls | tr '\n' ' ')into $out"
