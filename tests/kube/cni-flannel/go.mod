// Test-only wrapper module: builds the `flannel` CNI plugin (tests/kube/addons.sh). Its home today,
// github.com/flannel-io/cni-plugin, is refused by this machine's Go module proxy; v0.9.1 is the
// last release of containernetworking/plugins that still carries plugins/meta/flannel (removed in
// v1.0.0). It speaks CNI spec versions up to 0.4.0 (see tests/kube/addons/kube-flannel.yml).
module cloudsigma.test/kube/cniflannel

go 1.24.0

require github.com/containernetworking/plugins v0.9.1

require (
	github.com/Microsoft/go-winio v0.4.11 // indirect
	github.com/Microsoft/hcsshim v0.8.6 // indirect
	github.com/buger/jsonparser v0.0.0-20180808090653-f4dd9f5a6b44 // indirect
	github.com/containernetworking/cni v0.8.1 // indirect
	github.com/sirupsen/logrus v1.0.6 // indirect
	golang.org/x/crypto v0.0.0-20200622213623-75b288015ac9 // indirect
	golang.org/x/sys v0.0.0-20201117170446-d9b008d0a637 // indirect
)
